#!/usr/bin/env bash
# Copies the single sources the Helm chart embeds into charts/spotrun/files/, because a
# chart cannot read files outside its folder:
#   crds/*.yaml            -> charts/spotrun/files/crds/        (the TrainingRun CRD)
#   dashboards/*.json      -> charts/spotrun/files/dashboards/  (Grafana dashboards)
#   alerts/*.rules.yaml    -> charts/spotrun/files/alerts/      (Prometheus alert rules)
# The copies are byte-identical (tests/e2e/chart/test_chart_sync.py checks it); edit the
# sources, never the copies. Stale copies whose source is gone are removed.
#
#   hack/sync-chart-crds.sh          sync
#   hack/sync-chart-crds.sh --check  change nothing; exit 1 and list what is out of date
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
files="$root/charts/spotrun/files"
check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

stale=0
# sync_dir <source dir> <glob> <destination dir>
sync_dir() {
  local src=$1 pattern=$2 dst=$3 f name
  shopt -s nullglob
  local sources=("$src"/$pattern)
  if [ "$check" = 0 ]; then mkdir -p "$dst"; fi
  for f in "${sources[@]}"; do
    name=$(basename "$f")
    if ! cmp -s "$f" "$dst/$name"; then
      if [ "$check" = 1 ]; then
        echo "out of date: ${dst#"$root"/}/$name (source ${f#"$root"/})" >&2
        stale=1
      else
        cp "$f" "$dst/$name"
        echo "synced ${f#"$root"/} -> ${dst#"$root"/}/$name"
      fi
    fi
  done
  for f in "$dst"/$pattern; do
    name=$(basename "$f")
    if [ ! -e "$src/$name" ]; then
      if [ "$check" = 1 ]; then
        echo "stale: ${f#"$root"/} (no ${src#"$root"/}/$name)" >&2
        stale=1
      else
        rm -f "$f"
        echo "removed ${f#"$root"/}"
      fi
    fi
  done
  shopt -u nullglob
}

sync_dir "$root/crds" "*.yaml" "$files/crds"
sync_dir "$root/dashboards" "*.json" "$files/dashboards"
sync_dir "$root/alerts" "*.rules.yaml" "$files/alerts"

if [ "$check" = 1 ] && [ "$stale" = 1 ]; then
  echo "run hack/sync-chart-crds.sh" >&2
  exit 1
fi
