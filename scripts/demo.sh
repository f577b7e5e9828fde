#!/usr/bin/env bash
# The main job: set up, train a 3-fold classifier, report macro F1, then serve it and
# classify one photo through POST /invocations.
#
#   ./scripts/demo.sh                                   # the shared dev photos, when present
#   ./scripts/demo.sh PHOTOS "Genus species,Genus species"   # any folder of species subfolders
#
# Environment: EPOCHS (default 12, as `train`), OTHER_FRACTION (default 0.5), OUT (default runs/demo),
# PORT (default 8080), KEEP_SERVING (default 1; 0 stops the server after the test request).
set -euo pipefail
cd "$(dirname "$0")/.."

PHOTOS="${1:-../shared/datasets/species-dev}"
TARGETS="${2:-Lycorma delicatula,Acer rubrum}"
EPOCHS="${EPOCHS:-12}"
OTHER_FRACTION="${OTHER_FRACTION:-0.5}"
OUT="${OUT:-runs/demo}"
PORT="${PORT:-8080}"
KEEP_SERVING="${KEEP_SERVING:-1}"

if [ ! -d "$PHOTOS" ]; then
    echo "Photo folder '$PHOTOS' not found. Name a folder of species subfolders and the target species:" >&2
    echo "  ./scripts/demo.sh PATH/TO/PHOTOS \"Genus species,Genus species\"" >&2
    exit 2
fi

./scripts/setup.sh
. .venv/bin/activate

species-classifier train "$PHOTOS" --targets "$TARGETS" --folds 3 --epochs "$EPOCHS" \
    --other-fraction "$OTHER_FRACTION" --out "$OUT"

species-classifier serve "$OUT" --host 127.0.0.1 --port "$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$PORT/ping" >/dev/null && break
    sleep 1
done

# A photo of the first target species when its folder exists, else any photo.
FIRST_TARGET_DIR="$PHOTOS/$(echo "${TARGETS%%,*}" | tr ' ' '_')"
[ -d "$FIRST_TARGET_DIR" ] || FIRST_TARGET_DIR="$PHOTOS"
# sed reads all of sort's output. `head` may exit first, and sort's SIGPIPE would then end the script (pipefail).
PHOTO=$(find "$FIRST_TARGET_DIR" -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) | sort | sed -n 1p)
echo "POST /invocations with $PHOTO"
curl -sf -X POST -H "Content-Type: image/jpeg" --data-binary "@$PHOTO" "http://127.0.0.1:$PORT/invocations"
echo

if [ "$KEEP_SERVING" = 1 ]; then
    echo "Serving $OUT on http://127.0.0.1:$PORT (Ctrl-C stops)"
    wait "$SERVER"
fi
