"""Delete the NVIDIA libraries that PyTorch's shared objects never link against.

Usage: python prune_cuda.py SITE_PACKAGES

PyTorch's wheel from PyPI is the CUDA build: its shared objects NEED libcudart, libcublas, libcudnn,
libnccl, ... at load time even on a CPU, so the converter installs the nvidia-* wheels beside it
(runtime-image/converters/torch-nodeps.txt). Those wheels carry much more than torch loads. This
runs ldd on every shared object under SITE_PACKAGES/torch (ldd resolves torch's RPATHs into
SITE_PACKAGES/nvidia/...), keeps the libraries in that closure and deletes every other file under
nvidia/ (but its __init__.py files). Then it runs ldd again and exits 1 if a library that resolved
before the pruning no longer does. Libraries ldd could not find before are listed, not fatal:
the NVIDIA driver's libcuda.so.1 and libcusolver (libcaffe2_nvrtc.so and libtorch_cuda_linalg.so,
which torch opens only on a GPU), libquadmath for the bundled libgfortran that nothing links.
Standard library only: it runs in the image build before anything else is there.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024


@dataclass(frozen=True)
class Linkage:
    """What ldd reports for a set of shared objects."""

    resolved: frozenset[Path]  # every library ldd found, as a resolved path
    missing: frozenset[tuple[Path, str]]  # (shared object, soname) for each "=> not found"


def shared_objects(root: Path) -> list[Path]:
    """The ELF shared objects under root by name: lib*.so, lib*.so.N, *.cpython-*.so."""
    return sorted(
        p
        for p in root.rglob("*.so*")
        if p.is_file() and (p.name.endswith(".so") or ".so." in p.name)
    )


def ldd(objects: list[Path]) -> Linkage:
    """Runs ldd on each object and collects the libraries it resolves and those it cannot."""
    resolved: set[Path] = set()
    missing: set[tuple[Path, str]] = set()
    for obj in objects:
        # ldd exits 1 for a file that is not a dynamic object; its stdout is then just empty.
        out = subprocess.run(["ldd", str(obj)], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            name, arrow, target = line.strip().partition(" => ")
            if not arrow:
                continue  # linux-vdso.so.1 and the dynamic loader: no "=>"
            if target.strip() == "not found":
                missing.add((obj, name))
            elif target.startswith("/"):
                resolved.add(Path(target.rsplit(" (0x", 1)[0]).resolve())
    return Linkage(frozenset(resolved), frozenset(missing))


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def remove_empty_dirs(root: Path) -> None:
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(d.iterdir()):
            d.rmdir()


def prune(site: Path) -> int:
    torch, nvidia = site / "torch", site / "nvidia"
    for d in (torch, nvidia):
        if not d.is_dir():
            print(f"prune_cuda: error: no {d} (not a torch site-packages)", file=sys.stderr)
            return 2
    objects = shared_objects(torch)
    before = ldd(objects)
    keep = {p for p in before.resolved if p.is_relative_to(nvidia)}
    size_before = tree_bytes(nvidia)
    print(f"==> prune_cuda: {len(objects)} objects under torch/ link {len(keep)} from nvidia/")
    for lib in sorted(keep):
        print(f"    kept {lib.relative_to(site)}  {lib.stat().st_size / MiB:.1f} MiB")
    removed = 0
    for p in sorted(nvidia.rglob("*")):
        if (p.is_file() or p.is_symlink()) and p.name != "__init__.py" and p.resolve() not in keep:
            p.unlink()
            removed += 1
    remove_empty_dirs(nvidia)
    size_after = tree_bytes(nvidia)
    print(
        f"    nvidia/: {size_before} -> {size_after} bytes "
        f"({size_before / MiB:.0f} -> {size_after / MiB:.0f} MiB; {removed} files deleted)"
    )
    after = ldd(objects)
    broken = sorted(after.missing - before.missing)
    if broken:
        print("prune_cuda: error: ldd no longer finds, after pruning:", file=sys.stderr)
        for obj, name in broken:
            print(f"    {name} (for {obj.relative_to(site)})", file=sys.stderr)
        return 1
    for obj, name in sorted(before.missing):
        print(f"    not found before pruning either (not its doing): {name} for {obj.name}")
    print("    ldd after pruning: every library that resolved before still resolves")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python prune_cuda.py SITE_PACKAGES", file=sys.stderr)
        return 2
    return prune(Path(argv[0]).resolve())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
