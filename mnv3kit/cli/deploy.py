"""Render the Kubernetes manifests that serve a built repository, and validate them offline.

  python deploy.py --repo model_repository --set triton.restrictedApi.existingSecret=triton-key -o triton.yaml
  python deploy.py --repo model_repository --kserve -f my-values.yaml -o isvc.yaml

Runs `helm template` on the chart in deploy/helm/mnv3kit-triton with the values the repository's manifest decides
(TensorRT plan built in the pod when the repository has mobilenetv3_trt), then your -f files and --set values, and
validates every manifest: built-in kinds against the Kubernetes OpenAPI schemas (kubernetes-validate, strict),
InferenceService / ServiceMonitor / PodMonitor against their CRDs' schemas (deploy/schemas). Nothing talks to a
cluster; apply the result with `kubectl apply -f`, or install the chart itself with `helm install`.
Exit codes: 0 valid, 1 a manifest is invalid (each problem listed), 2 bad input or the chart refused the values.
"""

import argparse
import sys
from collections import Counter
from pathlib import Path

from mnv3kit.cli import add_output, add_repo
from mnv3kit.errors import cli_errors, prog_name


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_repo(p, default=None, help="repository built with build_repo.py --target ngc (omit: chart defaults)")
    p.add_argument("-f", "--values", type=Path, action="append", default=[], help="a values file (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a chart value (repeatable)")
    p.add_argument("--kserve", action="store_true", help="a KServe InferenceService instead of the Deployment")
    p.add_argument("--release", default="mnv3kit-triton", help="Helm release name (default mnv3kit-triton)")
    p.add_argument("--namespace", default="default")
    add_output(p, metavar="FILE", help="write the manifests to this file (default: stdout)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    with cli_errors():
        from mnv3kit.deploy import KUBE_VERSIONS, render_for_repository, to_yaml, validate
        from mnv3kit.errors import KitError

        for f in args.values:
            if not f.is_file():
                raise KitError(f"values file {f} does not exist")
        docs = render_for_repository(args.repo, args.values, args.set, args.kserve, args.release, args.namespace)
        problems = validate(docs)
        for problem in problems:
            print(f"invalid: {problem}", file=sys.stderr)
        if problems:
            print(f"{prog_name()}: {len(problems)} problem(s); nothing written", file=sys.stderr)
            return 1
        text = to_yaml(docs)
        if args.output:
            args.output.write_text(text)
        else:
            sys.stdout.write(text)
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(Counter(d["kind"] for d in docs).items()))
        manifests = f"{len(docs)} manifest{'' if len(docs) == 1 else 's'}"
        print(f"{manifests} ({kinds}) valid for Kubernetes {' and '.join(KUBE_VERSIONS)}"
              + (f"; wrote {args.output}" if args.output else ""), file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main())
