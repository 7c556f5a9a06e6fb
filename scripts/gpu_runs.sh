# Sourced by scripts/train_vae_{decoder,encoder}_gpu.sh: wait for their side-by-side train-vae runs,
# report each, and pack the bundles for a device machine's return limits.
#
#   finish_runs RUN_PREFIX NAME...   # runs are runs/${RUN_PREFIX}NAME (their logs runs/${RUN_PREFIX}NAME.log);
#                                    # waits for the PIDs in the array `pids`; uses PACK and T0 if set
finish_runs() {
  local prefix=$1; shift
  local status=0 pid name
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  for name in "$@"; do
    echo "== $name: $(tr '\r' '\n' < "runs/$prefix$name.log" | grep -v "it/s\]$\|s/it\]$" | tail -3 | tr '\n' ' ')"
    tail -1 "runs/$prefix$name/log.csv" 2>/dev/null || true
  done
  [ "$status" = 0 ] || { echo "a run failed: see runs/$prefix*.log"; exit 1; }
  if [ -n "${PACK:-}" ]; then
    mkdir -p "$PACK"
    for name in "$@"; do
      # each bundle as a tar in 15 MiB parts (a device machine returns files up to 16 MiB) plus its log
      rm -rf "runs/$prefix${name}_bundle" && cp -r "runs/$prefix$name/bundle" "runs/$prefix${name}_bundle"
      tar cf - -C runs "$prefix${name}_bundle" | split -b 15M -d - "$PACK/$prefix$name.tar.part"
      cp "runs/$prefix$name/log.csv" "$PACK/$prefix$name.log.csv"
    done
    echo "== packed into $PACK: $(ls "$PACK" | tr '\n' ' ')"
  fi
  echo "== done at $(( $(date +%s) - ${T0:-$(date +%s)} )) s"
}
