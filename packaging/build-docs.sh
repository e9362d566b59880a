#!/usr/bin/env bash
# Generates the packages' documentation into DIR (build.sh runs it):
#   edgegw.8.gz, edgegw.toml.5.gz   from the command table, each command's -h
#                                   and packaging/edgegw.toml (edgegw man)
#   edgegw.bash, _edgegw            shell completions (edgegw completion)
#   copyright                       packaging/debian/copyright (DEP-5) plus the
#                                   licenses of the Go modules linked in
#   changelog.Debian.gz             one entry for this build
# Environment as set by build.sh: VERSION, PKG_VERSION, SOURCE_DATE_EPOCH.
# The generator is built for the host (the package may be for another
# architecture); gzip -n and fixed file times keep the packages reproducible.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: build-docs.sh DIR}
: "${VERSION:?}" "${PKG_VERSION:?}" "${SOURCE_DATE_EPOCH:?}"
rm -rf "$dir" && mkdir -p "$dir"

gen=$dir/edgegw-host
GOOS= GOARCH= CGO_ENABLED=0 go build -trimpath -ldflags "-X main.version=$VERSION" -o "$gen" ./cmd/edgegw
"$gen" man -section 8 -o "$dir"
"$gen" man -section 5 -example packaging/edgegw.toml -o "$dir"
"$gen" completion bash >"$dir/edgegw.bash"
"$gen" completion zsh >"$dir/_edgegw"
rm "$gen"

{
	cat packaging/debian/copyright
	# The Go standard library and every module the binary links, as go list
	# reports them for the target platform.
	printf '\nFiles: *\nCopyright: The Go Authors\nLicense: BSD-3-clause-Go\nComment: the Go %s standard library, statically linked into /usr/bin/edgegw\n' \
		"$(go env GOVERSION)"
	printf '\nLicense: BSD-3-clause-Go\n'
	sed -e 's/^$/./' -e 's/^/ /' "$(go env GOROOT)/LICENSE"
	go list -deps -f '{{with .Module}}{{if not .Main}}{{.Path}} {{.Version}} {{.Dir}}{{end}}{{end}}' ./cmd/edgegw |
		sort -u | while read -r path version moddir; do
		lic=$(find "$moddir" -maxdepth 1 -type f -iregex '.*/\(licen[cs]e\|copying\)\(\.md\|\.txt\)?' | sort | head -1)
		[[ -n $lic ]] || { echo "build-docs.sh: no license file in $path $version" >&2; exit 1; }
		printf '\nFiles: *\nCopyright: see the License\nComment: Go module %s %s, statically linked into /usr/bin/edgegw\n' "$path" "$version"
		if grep -q 'Apache License' <(head -5 "$lic") && grep -q 'Version 2.0, January 2004' <(head -5 "$lic"); then
			printf 'License: Apache-2.0\n'
		else
			printf 'License: other\n'
			sed -e 's/[[:space:]]*$//' -e 's/^$/./' -e 's/^/ /' "$lic"
		fi
	done
} >"$dir/copyright"

maintainer=$(sed -n 's/^maintainer: //p' packaging/nfpm.yaml)
cat >"$dir/changelog.Debian" <<EOF
edgegw ($PKG_VERSION-1) unstable; urgency=medium

  * Build of edgegw $VERSION; the source history is the change log.

 -- $maintainer  $(date -u -R -d "@$SOURCE_DATE_EPOCH")
EOF
gzip -9n "$dir/edgegw.8" "$dir/edgegw.toml.5" "$dir/changelog.Debian"
touch -d "@$SOURCE_DATE_EPOCH" "$dir"/*
