#!/bin/sh
# edgegw post-removal (deb postrm, rpm %postun).
#   deb: $1 = remove | purge | upgrade | failed-upgrade | abort-* | disappear
#   rpm: $1 = number of edgegw packages after this step (0 = erase).
# After removal systemd forgets the units. The state (/var/lib/edgegw), the
# registry key (/etc/edgegw/edgegw.key) and the user stay, even on purge: a
# gateway's device registry and undelivered messages are never deleted by
# a package operation.
set -e

case "$1" in
remove | purge | 0) ;;
*) exit 0 ;;
esac

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
if [ "$1" = purge ]; then
	echo "edgegw: kept /var/lib/edgegw and /etc/edgegw/edgegw.key; remove them by hand if the data is no longer needed"
fi
exit 0
