#!/usr/bin/env bash
# Package test: the .deb carries its documentation (edgegw(8),
# edgegw.toml(5), bash and zsh completions, the DEP-5 copyright file, the
# Debian changelog) and lintian finds no error and no warning in it.
#
#   packaging/test-lintian.sh            builds the .deb with build.sh
#   EDGEGW_DEB=dist/x.deb packaging/...  checks that .deb instead
#
# Installs lintian when missing (Debian's package). Tags accepted on
# purpose are overridden, each with its reason, in
# packaging/lintian-overrides (shipped in the package, where lintian reads
# it); any other error or warning fails the test. Info tags are printed.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "FAIL: $*" >&2; exit 1; }

if ! command -v lintian >/dev/null; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq && apt-get install -y -qq --no-install-recommends lintian >/dev/null
fi

deb=${EDGEGW_DEB:-}
if [[ -z $deb ]]; then
	out=$(ARCHS=$(go env GOARCH) packaging/build.sh deb) || fail "packaging/build.sh deb"
	deb=$(sed -n 's/^created package: //p' <<<"$out")
fi
[[ -f $deb ]] || fail "no package ($deb)"

# The documentation is in the package, compressed as Debian policy wants.
contents=$(dpkg-deb -c "$deb" | awk '{print $6}')
for f in ./usr/share/man/man8/edgegw.8.gz ./usr/share/man/man5/edgegw.toml.5.gz \
	./usr/share/bash-completion/completions/edgegw ./usr/share/zsh/vendor-completions/_edgegw \
	./usr/share/doc/edgegw/copyright ./usr/share/doc/edgegw/changelog.Debian.gz \
	./usr/share/lintian/overrides/edgegw; do
	grep -qxF "$f" <<<"$contents" || fail "$deb lacks $f"
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "$deb" "$tmp"
grep -q '^License: Apache-2.0' "$tmp/usr/share/doc/edgegw/copyright" || fail "copyright is not Apache-2.0"
grep -q '^Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/' \
	"$tmp/usr/share/doc/edgegw/copyright" || fail "copyright is not DEP-5"
# The man pages render without a warning.
for m in "$tmp"/usr/share/man/man*/*.gz; do
	warn=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z "$m" 2>&1 >/dev/null) || fail "man -l $m"
	[[ -z $warn ]] || fail "man -l ${m#"$tmp"}: $warn"
done

start=$(date +%s.%N)
# --fail-on error,warning: exit non-zero on either; overridden tags do not
# count (--show-overrides would make them fail too, so it is not used).
out=$(lintian --fail-on error,warning --display-info "$deb" 2>&1) && rc=0 || rc=$?
secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
printf "%s\n" "$out"
((rc == 0)) || fail "lintian found errors or warnings in $deb (above)"
echo "PASS lintian $(lintian --version | awk '{print $2}') on $(basename "$deb") (${secs}s)"
