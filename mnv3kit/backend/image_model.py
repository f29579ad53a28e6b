"""Triton python-backend model `mobilenetv3_image` of a repository built with --image-model fused: encoded image
bytes -> logits in ONE process (the ensemble's two steps, preprocessing and classifier, in one model instance).

The preprocessing is the preprocessing model's own (Preprocessor: Pillow threads, or TensorDecoder on a GPU); the
classifier runs the artifact of a sibling model of the repository (config parameter `classifier`: its directory,
same version) with that model's runner and parameters (copied into this config by the build). Nothing crosses a
process: on a GPU the pixels stay on the instance's device from decode to logits, where the ensemble hands each
batch from one stub process to another (CUDA IPC) and the two processes time-slice the GPU. Same contract as the
ensemble: one file per batch item, logits [N, classes] labelled by labels.txt; an image that cannot be read fails its
own request only.

Copied into <model>/<version>/model.py with the two models' files beside it (mnv3kit_preprocessing.py,
mnv3kit_classifier.py, mnv3kit_serving.py and the kit's preprocessing in mnv3kit_preprocess/).
"""

from pathlib import Path

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton by the kit's tests
    pb_utils = None

try:  # in a model repository: the copies beside this file (the stub puts the version directory on sys.path)
    from mnv3kit_classifier import TorchRunner, logit_responses, make_runner
    from mnv3kit_preprocessing import check_warmup, group_results, make_preprocessor, take_images
    from mnv3kit_serving import RequestQueue, read_config
except ModuleNotFoundError:  # imported by the kit itself
    from mnv3kit.backend.classifier_model import TorchRunner, logit_responses, make_runner
    from mnv3kit.backend.preprocess_model import check_warmup, group_results, make_preprocessor, take_images
    from mnv3kit.backend.serving import RequestQueue, read_config


class TritonPythonModel:
    def initialize(self, args):
        config, params, self.input_name, self.output_name = read_config(args)
        name = args["model_instance_name"]
        pixels = params["classifier_input"] == "TYPE_UINT8"  # a classifier that normalizes: uint8 pixels go in
        self.preprocess = make_preprocessor(args, params, pixels)
        model_dir = Path(args["model_repository"])
        check_warmup(config, model_dir, pixels)
        classifier_dir = model_dir.parent / params["classifier"] / args["model_version"]

        def setup():  # on the worker thread, which runs every batch: CUDA's current device and torch's threads
            self.preprocess.bind_thread()
            self.forward = make_runner(classifier_dir, config, params, args["model_instance_kind"] == "GPU",
                                       int(args["model_instance_device_id"]), pixels, params["classifier_input_name"],
                                       name)

        self.queue = RequestQueue(name, self._respond, lambda request: take_images(request, self.input_name),
                                  int(config.get("max_batch_size", 0)) or 1,
                                  int(params.get("max_queue_size", "0") or 0),
                                  int(params.get("queue_timeout_us", "0") or 0), setup, pb_utils.Logger.log_warn,
                                  lambda *state: self.forward.adapt(*state),
                                  params.get("yield_core", "auto"))

    def execute(self, requests):
        # the worker answers admitted requests through their response senders; refusals go back from here
        return self.queue.submit(requests)

    def _respond(self, per_request):
        responses = group_results(per_request, self.preprocess([d for datas in per_request for d in datas]))
        good = [i for i, r in enumerate(responses) if isinstance(r, list)]
        if good:  # one batch of every readable request, one forward pass
            batch = self.preprocess.batch([item for i in good for item in responses[i]])
            if not isinstance(batch, np.ndarray) and not isinstance(self.forward, TorchRunner):
                batch = batch.cpu().numpy()  # ONNX Runtime and OpenVINO take host arrays
            logits = self.forward(batch)
            for i, response in zip(good, logit_responses(self.output_name, logits, [len(responses[i]) for i in good])):
                responses[i] = response
        return responses

    def finalize(self):
        self.queue.close()
        self.preprocess.close()
