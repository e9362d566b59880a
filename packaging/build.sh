#!/usr/bin/env bash
# Builds edgegw's packages into dist/, for each target architecture.
#
#   packaging/build.sh [deb] [rpm]        (default: both)
#
# Architectures (Go name → .deb / .rpm name):
#   amd64          → amd64 / x86_64
#   arm64          → arm64 / aarch64
#   arm (GOARM=7)  → armhf / armv7hl     (32-bit ARMv7 with hardware float)
# Each binary is also left in dist/build/linux_ARCH/edgegw (ARCH: amd64,
# arm64, armv7), for packaging/test-arm.sh and build-image.sh.
#
# Environment:
#   VERSION            version stamped into the binary (default: git describe
#                      --tags --always --dirty, else 0.0.0-dev)
#   ARCHS              Go architectures to build (default: "amd64 arm64 arm")
#   GOARCH             if set (and ARCHS is not), build only this architecture
#   COMMIT             source revision stamped into the binary and
#                      edgegw_build_info (default: git rev-parse HEAD;
#                      see stamp.sh); the build date is SOURCE_DATE_EPOCH
#   SOURCE_DATE_EPOCH  file and archive times (default: the HEAD commit time),
#                      so the same tree builds byte-identical packages
#
# The binary is static (CGO_ENABLED=0), built with -trimpath; nfpm is run at
# a pinned version through the Go module proxy.
set -euo pipefail
cd "$(dirname "$0")/.."

NFPM=github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2

formats=("$@")
[[ ${#formats[@]} -gt 0 ]] || formats=(deb rpm)
for f in "${formats[@]}"; do
	case $f in
	deb | rpm) ;;
	*) echo "build.sh: unknown package format $f (want deb or rpm)" >&2; exit 2 ;;
	esac
done

VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || true)}
VERSION=${VERSION:-0.0.0-dev}
ARCHS=${ARCHS:-${GOARCH:-amd64 arm64 arm}}
for a in $ARCHS; do
	case $a in
	amd64 | arm64 | arm) ;;
	*) echo "build.sh: unknown architecture $a (want amd64, arm64 or arm)" >&2; exit 2 ;;
	esac
done
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
# shellcheck source=packaging/stamp.sh
source packaging/stamp.sh # COMMIT, BUILD_DATE, STAMP_LDFLAGS

# Package managers want a version that starts with a digit: v1.2.3 → 1.2.3,
# v1.2.3-4-gabcdef → 1.2.3+4.gabcdef, an untagged abcdef-dirty →
# 0.0.0~gabcdef.dirty ("~" sorts before any release in dpkg and rpm).
pkg_version() {
	local v=${1#v} base rest
	if [[ $v =~ ^[0-9]+(\.[0-9]+)*$ ]]; then
		echo "$v"
	elif [[ $v =~ ^([0-9]+(\.[0-9]+)*)-(.*)$ ]]; then
		base=${BASH_REMATCH[1]} rest=${BASH_REMATCH[3]}
		if [[ $rest =~ ^[0-9]+-g ]]; then
			echo "$base+${rest//-/.}"
		else
			echo "$base~${rest//-/.}"
		fi
	else
		echo "0.0.0~g${v//-/.}"
	fi
}
PKG_VERSION=$(pkg_version "$VERSION")
export PKG_VERSION SOURCE_DATE_EPOCH

# nfpm runs on the build host: build it once, for the host (a cross GOARCH
# in the environment would make `go run` build an nfpm this host cannot run).
tools=dist/build/tools
mkdir -p "$tools"
env -u GOARCH -u GOARM GOBIN="$PWD/$tools" go install "$NFPM"

# nfpm.yaml reads the staged binary from dist/build/edgegw (nfpm does not
# expand variables in src) and its arch from NFPM_ARCH, in nfpm's GOARCH
# spelling (arm7 → armhf / armv7hl).
bin=dist/build/edgegw
# Man pages, completions, copyright, changelog: the same for every architecture.
VERSION=$VERSION packaging/build-docs.sh dist/build/doc
for goarch in $ARCHS; do
	goarm='' nfpm_arch=$goarch dir=linux_$goarch
	if [[ $goarch == arm ]]; then
		goarm=7 nfpm_arch=arm7 dir=linux_armv7
	fi
	echo "== edgegw $VERSION (package $PKG_VERSION, linux/$goarch${goarm:+/v$goarm}, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)"
	mkdir -p "dist/build/$dir"
	CGO_ENABLED=0 GOOS=linux GOARCH=$goarch GOARM=$goarm go build -trimpath \
		-ldflags "-s -w $STAMP_LDFLAGS" \
		-o "dist/build/$dir/edgegw" ./cmd/edgegw
	touch -d "@$SOURCE_DATE_EPOCH" "dist/build/$dir/edgegw"
	cp -p "dist/build/$dir/edgegw" "$bin"

	for f in "${formats[@]}"; do
		out=$(NFPM_ARCH=$nfpm_arch "$tools/nfpm" package --config packaging/nfpm.yaml --packager "$f" --target dist/ 2>&1) ||
			{ echo "$out" >&2; exit 1; }
		pkg=$(sed -n 's/^created package: //p' <<<"$out")
		echo "created package: $pkg"
		sha256sum "$pkg"
	done
done
