#!/usr/bin/env bash
# Builds edgegw's container image with buildah (no Docker engine needed).
#
#   packaging/build-image.sh [IMAGE]     (default: localhost/edgegw:$VERSION)
#
# One architecture (the default: GOARCH, else the host's): the image is also
# tagged localhost/edgegw:latest and exported to
# dist/edgegw-image_$VERSION_$GOARCH.tar (docker-archive, loadable with
# `podman load -i` or `docker load -i`).
#
# Several (ARCHS="amd64 arm64 arm"): one image per architecture, tagged
# IMAGE-amd64, IMAGE-arm64 and IMAGE-armv7, each built for its platform
# (linux/amd64, linux/arm64, linux/arm/v7) from the cross-compiled binary;
# FROM scratch with only COPY steps, so nothing runs on the foreign
# architecture and no binfmt/qemu is needed. IMAGE is then the multi-arch
# manifest list of the three, exported with all of them to
# dist/edgegw-image_$VERSION.oci.tar (OCI archive with an image index:
# `skopeo copy --all oci-archive:FILE docker://REGISTRY/edgegw:TAG`).
# Multi-arch images are always in OCI format (no HEALTHCHECK field: run
# with --health-cmd).
#
# Environment:
#   VERSION, SOURCE_DATE_EPOCH   as for build.sh; the image's creation
#                                time and file times come from
#                                SOURCE_DATE_EPOCH
#   ARCHS    Go architectures: amd64, arm64, arm (built as GOARM=7)
#            (default: GOARCH, else go env GOARCH)
#   FORMAT   docker (default) or oci. The docker format keeps the image's
#            HEALTHCHECK; its layer is bit-identical across rebuilds of the
#            same tree, but its config records the random ID and hostname of
#            buildah's build container, so the image ID is not. The OCI
#            format is bit-identical as a whole but has no field for a
#            health check (run it with podman --health-cmd instead).
#   CA_BUNDLE  PEM roots copied into the image for the cloud's TLS
#              (default /etc/ssl/certs/ca-certificates.crt)
set -euo pipefail
cd "$(dirname "$0")/.."

command -v buildah >/dev/null || {
	echo "build-image.sh: needs buildah (apt-get install --no-install-recommends buildah runc)" >&2
	exit 2
}
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || true)}
VERSION=${VERSION:-0.0.0-dev}
ARCHS=${ARCHS:-${GOARCH:-$(go env GOARCH)}}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
# shellcheck source=packaging/stamp.sh
source packaging/stamp.sh # COMMIT, BUILD_DATE, STAMP_LDFLAGS
FORMAT=${FORMAT:-docker}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
IMAGE=${1:-localhost/edgegw:$VERSION}
case $FORMAT in docker | oci) ;; *) echo "build-image.sh: FORMAT must be docker or oci" >&2; exit 2 ;; esac
[[ -s $CA_BUNDLE ]] || { echo "build-image.sh: no CA bundle at $CA_BUNDLE (install ca-certificates or set CA_BUNDLE)" >&2; exit 2; }
read -ra archs <<<"$ARCHS"
for a in "${archs[@]}"; do
	case $a in amd64 | arm64 | arm) ;; *) echo "build-image.sh: unknown architecture $a (want amd64, arm64 or arm)" >&2; exit 2 ;; esac
done
multi=false
if ((${#archs[@]} > 1)); then
	multi=true FORMAT=oci
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

# build_one GOARCH TAG: builds the image for linux/GOARCH as TAG and prints its ID.
build_one() {
	local goarch=$1 tag=$2 goarm='' platform=linux/$1 old id
	if [[ $goarch == arm ]]; then
		goarm=7 platform=linux/arm/v7
	fi
	echo "== edgegw $VERSION image $tag ($platform, $FORMAT format, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)" >&2
	rm -rf "$ctx" && mkdir -p "$ctx"
	CGO_ENABLED=0 GOOS=linux GOARCH=$goarch GOARM=$goarm go build -trimpath \
		-ldflags "-s -w $STAMP_LDFLAGS" \
		-o "$ctx/rootfs/usr/bin/edgegw" ./cmd/edgegw
	install -D -m 0644 packaging/edgegw.toml "$ctx/rootfs/etc/edgegw/edgegw.toml"
	install -D -m 0644 "$CA_BUNDLE" "$ctx/rootfs/etc/ssl/certs/ca-certificates.crt"
	printf 'root:x:0:0:root:/root:/sbin/nologin\nedgegw:x:65532:65532:edgegw:/var/lib/edgegw:/sbin/nologin\n' >"$ctx/rootfs/etc/passwd"
	printf 'root:x:0:\nedgegw:x:65532:\n' >"$ctx/rootfs/etc/group"
	chmod 0644 "$ctx/rootfs/etc/passwd" "$ctx/rootfs/etc/group"
	install -d -m 1777 "$ctx/rootfs/tmp"
	# Owned by 65532 in the image (COPY --chown): the state volume and the
	# directory of the admin socket.
	install -d -m 0700 "$ctx/state/var/lib/edgegw"
	install -d -m 0750 "$ctx/state/run/edgegw"
	cp packaging/Containerfile "$ctx/Containerfile"
	find "$ctx" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

	old=$(buildah images --quiet --no-trunc "$tag" 2>/dev/null | head -n1 || true)
	id=$(buildah build --quiet --timestamp "$SOURCE_DATE_EPOCH" --format "$FORMAT" --platform "$platform" \
		--build-arg "VERSION=$VERSION" --build-arg "COMMIT=$COMMIT" -t "$tag" -f "$ctx/Containerfile" "$ctx" | tail -n1)
	# The previous build under this tag is now unnamed: drop it (unless in use).
	if [[ -n $old && $old != *"$id"* ]]; then
		buildah rmi "$old" >/dev/null 2>&1 || true
	fi
	echo "$id"
}

mkdir -p dist
if ! $multi; then
	GOARCH=${archs[0]}
	id=$(build_one "$GOARCH" "$IMAGE")
	buildah tag "$IMAGE" localhost/edgegw:latest
	archive=dist/edgegw-image_${VERSION}_${GOARCH}.tar
	rm -f "$archive"
	buildah push --quiet "$IMAGE" "docker-archive:$archive:$IMAGE"
	echo "image $IMAGE (ID ${id:0:12}), archive $archive ($(sha256sum <"$archive" | cut -c1-12))"
	exit 0
fi

# A manifest list and an image cannot share a name: drop what holds IMAGE.
buildah manifest rm "$IMAGE" >/dev/null 2>&1 || buildah rmi "$IMAGE" >/dev/null 2>&1 || true
tags=()
for a in "${archs[@]}"; do
	t=$IMAGE-$a
	[[ $a == arm ]] && t=$IMAGE-armv7
	build_one "$a" "$t" >/dev/null
	tags+=("$t")
done
buildah manifest create "$IMAGE" >/dev/null
for t in "${tags[@]}"; do
	buildah manifest add "$IMAGE" "containers-storage:$t" >/dev/null
done
archive=dist/edgegw-image_${VERSION}.oci.tar
rm -f "$archive"
# Through an OCI layout and a sorted tar with fixed times, so that the
# archive is byte-identical across rebuilds (oci-archive: would stamp the
# tar headers with the current time; the index and blobs already are).
buildah manifest push --quiet --all --format oci "$IMAGE" "oci:$ctx/oci:$IMAGE"
tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner --format=gnu \
	-C "$ctx/oci" -cf "$archive" oci-layout index.json blobs
echo "manifest list $IMAGE ($(buildah manifest inspect "$IMAGE" |
	sed -n 's/.*"architecture": "\(.*\)".*/\1/p' | paste -sd, -)), archive $archive ($(sha256sum <"$archive" | cut -c1-12))"
