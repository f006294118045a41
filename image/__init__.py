"""The Raspberry Pi image of w3gate (``./dev.sh image``): a Debian bookworm arm64 base, cached,
with the w3gate layer on top, assembled into an SD-card image without mounting anything; and
``./dev.sh image-test``, which boots it under qemu-system-aarch64.

Steps, one module each: :mod:`image.rootfs` (mmdebstrap, chroot), :mod:`image.wheels` (the arm64
wheelhouse), :mod:`image.layer` (w3gate, its units, first boot), :mod:`image.assemble` (the
partitions and the image), :mod:`image.boot` (the QEMU boot test).
"""
