# Sourced by build.sh and build-image.sh once VERSION and SOURCE_DATE_EPOCH
# are set: sets COMMIT (default: git rev-parse HEAD, "-dirty" when tracked
# files changed; "unknown" outside git), BUILD_DATE (SOURCE_DATE_EPOCH in
# RFC 3339 UTC, so rebuilds stay byte-identical) and STAMP_LDFLAGS, the -X
# flags `edgegw version` and edgegw_build_info read.
# shellcheck shell=bash
if [[ -z ${COMMIT:-} ]]; then
	COMMIT=$(git rev-parse HEAD 2>/dev/null || true)
	if [[ -n $COMMIT && -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
		COMMIT+=-dirty
	fi
fi
COMMIT=${COMMIT:-unknown}
BUILD_DATE=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
STAMP_LDFLAGS="-X main.version=$VERSION -X main.commit=$COMMIT -X main.date=$BUILD_DATE"
