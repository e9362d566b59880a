#!/usr/bin/env bash
# Builds edgegw's packages into dist/.
#
#   packaging/build.sh [deb] [rpm]        (default: both)
#
# Environment:
#   VERSION            version stamped into the binary (default: git describe
#                      --tags --always --dirty, else 0.0.0-dev)
#   GOARCH             target architecture (default: go env GOARCH)
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
GOARCH=${GOARCH:-$(go env GOARCH)}
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
export GOARCH PKG_VERSION SOURCE_DATE_EPOCH

bin=dist/build/edgegw
echo "== edgegw $VERSION (package $PKG_VERSION, linux/$GOARCH, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)"
CGO_ENABLED=0 GOOS=linux go build -trimpath \
	-ldflags "-s -w $STAMP_LDFLAGS" \
	-o "$bin" ./cmd/edgegw
touch -d "@$SOURCE_DATE_EPOCH" "$bin"
VERSION=$VERSION packaging/build-docs.sh dist/build/doc

for f in "${formats[@]}"; do
	out=$(go run "$NFPM" package --config packaging/nfpm.yaml --packager "$f" --target dist/ 2>&1) ||
		{ echo "$out" >&2; exit 1; }
	pkg=$(sed -n 's/^created package: //p' <<<"$out")
	echo "created package: $pkg"
	sha256sum "$pkg"
done
