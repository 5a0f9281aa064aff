#!/bin/sh
# Format (first boot only) and mount the node's data volume at /var/lib/kvraft.
# The volume is found by its id, which Nitro instances expose as the NVMe serial
# (/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol...); older instances see the
# attachment's device name. It is mounted by filesystem label, never by /dev/nvmeXn1,
# whose numbering can change between boots.
set -eu
volume_id="$1"            # vol-0123...
fallback="$2"             # /dev/sdf
label=kvraft-data
by_id="/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_$(echo "$volume_id" | tr -d -)"
i=0
while :; do
  for dev in "$by_id" "$fallback" "/dev/xvd${fallback#/dev/sd}"; do
    if [ -b "$dev" ]; then break 2; fi
  done
  i=$((i + 1))
  if [ "$i" -gt 300 ]; then echo "kvraft: data volume $volume_id never appeared" >&2; exit 1; fi
  sleep 1   # the attachment follows the instance's start
done
dev=$(readlink -f "$dev")
# Format only a volume that blkid positively finds empty (exit 2); any other failure
# (a probe error, an ambiguous signature) stops here rather than risk the data.
set +e
blkid -p "$dev" >/dev/null 2>&1
probe=$?
set -e
if [ "$probe" -eq 2 ]; then
  mkfs.ext4 -q -L "$label" "$dev"
elif [ "$probe" -ne 0 ]; then
  echo "kvraft: blkid -p $dev exited $probe; not formatting" >&2
  exit 1
fi
mkdir -p /var/lib/kvraft
grep -q "LABEL=$label" /etc/fstab || \
  echo "LABEL=$label /var/lib/kvraft ext4 defaults,noatime,nofail,x-systemd.device-timeout=300 0 2" >> /etc/fstab
mountpoint -q /var/lib/kvraft || mount /var/lib/kvraft
mkdir -p /var/lib/kvraft/data
chown -R kvraft:kvraft /var/lib/kvraft
chmod 0700 /var/lib/kvraft
