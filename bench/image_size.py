"""The operator image's size, and how long the base and the build take, cold or warm.

Run: scripts/bench image_size          (warm: podman's layer cache and the cached base)
     scripts/bench image_size --cold   (first removes the image, podman's untagged build layers,
                                        the imported base and its cached tarball)
"""

from __future__ import annotations

import subprocess
import sys

from common import record

from keyrotor.testing import image


def forget_everything() -> None:
    """Remove what a cold build must redo (only this image's names, and untagged layers)."""
    for ref in (image.IMAGE_TAG, image.BASE_NAME):
        subprocess.run(["podman", "rmi", "--force", ref], capture_output=True, check=False)
    subprocess.run(["podman", "image", "prune", "--force"], capture_output=True, check=False)
    for path in image.image_dir().glob("base-*"):
        path.unlink()


def main() -> None:
    cold = "--cold" in sys.argv[1:]
    if cold:
        forget_everything()
    built = image.build()
    with image.mounted(built.tag) as root:
        rootfs = image.rootfs_bytes(root)
        venv = image.rootfs_bytes(root / "opt" / "venv")
    base = image.inspect(image.BASE_NAME)
    record(f"Operator image size and build time ({'cold' if cold else 'warm'})", [
        f"- image {built.tag} ({built.config.id[:12]}): `podman image inspect` Size "
        f"**{built.config.size / 1e6:.0f} MB** ({built.config.size} bytes)",
        f"- its root filesystem (podman image mount, apparent size of every file): "
        f"{rootfs / 1e6:.0f} MB, of which the venv /opt/venv {venv / 1e6:.0f} MB",
        f"- base {image.BASE_NAME} made with mmdebstrap (minbase): {base.size / 1e6:.0f} MB",
        f"- base ready in {built.base_seconds:.1f} s, podman build --isolation chroot "
        f"{built.build_seconds:.1f} s ({'nothing cached' if cold else 'layer cache, base cached'})",
    ])


if __name__ == "__main__":
    main()
