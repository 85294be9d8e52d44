"""algd-export policy.pt [-o DIR] [--batch N] [--opset N]."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="algd-export", description="Freeze a policy.pt into an ONNX bundle.")
    p.add_argument("policy", type=Path)
    p.add_argument("-o", "--out", type=Path, help="bundle folder (default: bundle/ beside the policy)")
    p.add_argument("--batch", type=int, help="fix the batch size (default: dynamic batch)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--force", action="store_true", help="replace a bundle already in the output folder")
    args = p.parse_args(argv)

    from algd_runtime.checkpoint import CheckpointError
    from algd_runtime.export.exporter import ExportError, export_bundle
    from algd_runtime.runtime import bundle_digest

    out = args.out or args.policy.parent / "bundle"
    print(f"exporting {args.policy} -> {out} (opset {args.opset}, batch {args.batch or 'dynamic'}); "
          f"measuring parity on 1000 observations ...", flush=True)
    try:
        manifest = export_bundle(args.policy, out, batch=args.batch, opset=args.opset, force=args.force)
    except (CheckpointError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    par = manifest["parity"]["max_abs_error"]
    print("parity (max abs error vs torch): " + ", ".join(f"{k} {v:.2e}" for k, v in par.items()))
    near = {k: v for k, v in manifest["parity"]["near_kink"].items() if isinstance(v, dict) and v["points"]}
    if near:  # either branch of a kink is right: reported, not certified
        print("near a critic's kink (reported apart): " + ", ".join(
            f"{k} {v['points']} points, max {v['max_abs_error']:.2e}" for k, v in near.items()))
    for key, f in manifest["files"].items():
        print(f"  {f['path']:<24} {f['bytes'] / 1024:8.1f} KiB  sha256 {f['sha256'][:16]}...")
    print(f"wrote {out}/manifest.yaml")
    # What a deployment pins (PolicyRuntime.load(expect_digest=...)): it covers every file.
    print(f"bundle digest (sha256 of manifest.yaml): {bundle_digest(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
