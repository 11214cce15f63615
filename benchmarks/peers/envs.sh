#!/usr/bin/env bash
# Create the peers' own venvs (never ptycli's): phaser (phaserEM, numpy backend) and PtyRAD
# (ptyrad with CPU torch). Usage: bash benchmarks/peers/envs.sh [phaser] [ptyrad]
# VENVS=~/.cache/ptycli/venvs by default (benchmarks/corpus/run.py looks there, or in
# $PTYCLI_PEER_VENVS). TORCH_WHEEL may name a local CPU torch wheel: PyPI's default torch
# wheels carry CUDA and weigh several GB.
set -euo pipefail
VENVS=${PTYCLI_PEER_VENVS:-$HOME/.cache/ptycli/venvs}
PYTHON=${PYTHON:-python3.11}
want=${*:-phaser ptyrad}
mkdir -p "$VENVS"
for peer in $want; do
  case $peer in
    phaser)
      "$PYTHON" -m venv "$VENVS/phaser"
      "$VENVS/phaser/bin/pip" install phaserEM pyyaml ;;
    ptyrad)
      "$PYTHON" -m venv "$VENVS/ptyrad"
      wheel=${TORCH_WHEEL:-$(ls /opt/wheels/torch-*+cpu-*.whl 2>/dev/null | head -n 1 || true)}
      "$VENVS/ptyrad/bin/pip" install ${wheel:+"$wheel"} ptyrad pyyaml ;;
    *) echo "envs.sh: unknown peer '$peer' (expected phaser or ptyrad)" >&2; exit 2 ;;
  esac
  echo "$peer: $VENVS/$peer/bin/python"
done
