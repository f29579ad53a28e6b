"""Classify images with a MobileNetV3 model served by Triton (HTTP or gRPC).

  python client/classify.py photo.jpg more/ -m mobilenetv3_pt -i grpc -k 3 -b 8

Images are preprocessed exactly as in training (EXIF orientation, any mode -> RGB, Resize 256, CenterCrop 224,
normalize) and sent as binary FP32 tensors (UINT8 pixels to a model with a UINT8 input, which normalizes them
itself). To a model that takes encoded images (mobilenetv3_image, input UINT8 [-1]) the files themselves are sent,
one request per file, and the server decodes and preprocesses them; the model's config tells which (--send).
Labels and logits come from Triton's classification extension; probabilities are the softmax over all classes.
Folders are searched recursively for images. An image that cannot be read is reported and skipped; the others are
still classified.
A server with restricted admin APIs (serve.py, the kit's compose file) lists its ready models, when -m names one
it lacks, only with its key in $TRITON_ADMIN_KEY.
"""

import argparse
import json
import os
import sys


from mnv3kit.cli import add_server, model_name
from mnv3kit.client import (EXIT_CODES, MAX_IN_FLIGHT, SEND_MODES, Classified, TritonClassifier,
                            classify, expand_inputs)
from mnv3kit.errors import KitError, cli_errors, prog_name
from mnv3kit.spec import ADMIN_KEY_ENV, PT


def parse_args(argv=None) -> argparse.Namespace:
    codes = "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1]
                                + "\nexit codes:\n" + codes, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("-m", "--model", type=model_name, default=PT.name, metavar="NAME",
                   help=f"model on the server: its name or key, e.g. u8, image (default {PT.name})")
    add_server(p)
    p.add_argument("-k", "--topk", type=int, default=3, help="classes to show per image (default 3)")
    p.add_argument("-b", "--batch-size", type=int, default=1,
                   help="images per request, at most the model's max_batch_size (default 1)")
    p.add_argument("--async", dest="use_async", action="store_true",
                   help="keep up to --max-in-flight requests in flight and collect the answers as they come")
    p.add_argument("--max-in-flight", type=int, default=MAX_IN_FLIGHT, metavar="N",
                   help=f"with --async: requests in flight at once (default {MAX_IN_FLIGHT}; more than the model's "
                        f"max_queue_size, 32 by default, can be refused as overload)")
    p.add_argument("--json", action="store_true", help="one JSON record per image on stdout (errors included)")
    p.add_argument("--send", choices=SEND_MODES, default="auto",
                   help="auto: what the model's input takes (default); bytes: the image files themselves; tensor: "
                        "preprocessed here. With bytes, -b N keeps N single-file requests in flight")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per network call (default 60)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    with cli_errors():
        if args.topk < 1:
            raise KitError("--topk must be >= 1")
        paths = expand_inputs(args.images)
        if not paths:
            raise KitError(f"no images found in {', '.join(args.images)}")
        classifier = TritonClassifier(args.url, args.protocol, args.model, args.timeout,
                                      concurrency=args.max_in_flight if args.use_async else args.batch_size,
                                      send=args.send, admin_key=os.environ.get(ADMIN_KEY_ENV))
        if args.topk > classifier.num_classes:
            print(f"{prog_name()}: note: -k {args.topk} is above the {classifier.num_classes} classes of {args.model}: "
                  f"showing all {classifier.num_classes}", file=sys.stderr)
        failed = total = 0
        try:
            # each record printed as soon as its batch is answered: a failure midway keeps what came before
            for record in classify(classifier, paths, args.batch_size, args.topk, args.use_async,
                                   args.max_in_flight):
                total += 1
                if isinstance(record, Classified):
                    if args.json:
                        print(json.dumps({"path": record.path, "model": args.model, "top": [
                            {"label": label, "index": index, "prob": prob, "logit": logit}
                            for label, index, prob, logit in record.top], "logits": record.logits}), flush=True)
                    else:
                        print(f"{record.path}: " + ", ".join(f"{label} {prob:.3f}" for label, _, prob, _ in record.top),
                              flush=True)
                else:
                    failed += 1
                    print(f"{prog_name()}: skipped {record.error}", file=sys.stderr)
                    if args.json:
                        print(json.dumps({"path": record.path, "error": record.error}), flush=True)
        except BrokenPipeError:
            # the reader went away (| head): stop at once, without waiting for requests still in flight
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            os._exit(141)
        classifier.close()
        if failed:
            print(f"{prog_name()}: {failed} of {total} images could not be read", file=sys.stderr)
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
