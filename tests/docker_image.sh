#!/bin/sh
# Build the offline test image mlsm-test/busybox:latest from Debian's busybox-static.
#
# No registry is reachable in CI, so the image is assembled from a local rootfs and
# loaded with `docker import`. Idempotent: does nothing when the image already exists.
# Needs: a running Docker engine, /bin/busybox (Debian package busybox-static).
set -eu

IMAGE="${MLSM_TEST_IMAGE:-mlsm-test/busybox:latest}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "docker_image.sh: $IMAGE already present"
    exit 0
fi

if ! "$BUSYBOX" --list >/dev/null 2>&1; then
    echo "docker_image.sh: $BUSYBOX is not a working busybox (apt-get install busybox-static)" >&2
    exit 1
fi

ROOTFS="$(mktemp -d)"
chmod 755 "$ROOTFS"  # mktemp makes it 0700: no other user could reach /bin
trap 'rm -rf "$ROOTFS"' EXIT

mkdir -p "$ROOTFS/bin" "$ROOTFS/etc" "$ROOTFS/tmp" "$ROOTFS/root" "$ROOTFS/proc" \
    "$ROOTFS/sys" "$ROOTFS/dev" "$ROOTFS/home"
chmod 1777 "$ROOTFS/tmp"
cp "$BUSYBOX" "$ROOTFS/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] && continue
    ln -sf busybox "$ROOTFS/bin/$applet"
done
mkdir -p "$ROOTFS/usr"
ln -s ../bin "$ROOTFS/usr/bin"
ln -s bin "$ROOTFS/sbin"

cat >"$ROOTFS/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat >"$ROOTFS/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP

tar -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/bin:/usr/bin:/sbin' \
    --change 'CMD ["/bin/sh"]' \
    - "$IMAGE" >/dev/null
echo "docker_image.sh: built $IMAGE"
