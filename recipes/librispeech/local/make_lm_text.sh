#!/usr/bin/env bash
# LM text for LibriSpeech (Mini LibriSpeech included) from Project Gutenberg books, then a 4-gram without the
# dev chapters' text. Book text stays outside the repository.
#
# Source (fetched once, by hand; nothing here downloads anything):
#   GitHub rcdm-uga/Gutenberg_Text, commit a0b16d35a9851168ce9ac649851c17b7ab08d48e (README: books of Project
#   Gutenberg's top 100 authors, pulled with the c-w/gutenberg library; headers and licences still in): 3,383
#   .txt files under "<Author>/<Title>.txt", 3,143 distinct blobs, ~1.2 GB. A bare clone or snapshot of it:
#     git clone --bare https://github.com/rcdm-uga/Gutenberg_Text  "$GIT_DIR"
#   Its snapshot lacked 2 blobs; 3,080 distinct books were exported.
#
# Usage: make_lm_text.sh GIT_DIR_OR_RAW_FOLDER [LM_DIR] [HELD_OUT_MANIFEST...]
#   GIT_DIR_OR_RAW_FOLDER  the bare git directory (its HEAD's .txt files are exported, each blob once, into
#                          LM_DIR/raw) or a folder of Gutenberg .txt books already exported
#   LM_DIR                 where the text and the LM go (default /work/lsdata/lm)
#   HELD_OUT_MANIFEST      dev / test manifests whose text must not be in the LM (default
#                          /work/lsdata/data/dev.jsonl)
#   $DEV_BOOKS             regex of the held-out chapters' book titles (CHAPTERS.TXT's last column), whose every
#                          edition is dropped: default, the Mini LibriSpeech dev-heldout speakers' books
#                          (4640: Les Miserables vol. 5, 2136: Uncle Silas, 5789: Trent's Last Case,
#                          3664: Buffalo Bill); only Les Miserables (5 files) is in this corpus
# Writes LM_DIR/books.txt (a sentence a line, normalised like the transcripts), books.index.tsv (its line
# ranges per book), books_nodev.txt (without the held-out books), overlap.txt (`asrkit lm overlap` of it before
# the exclusion) and books_nodev_4gram.{arpa,bin,unigrams.txt}.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=${1:?usage: make_lm_text.sh GIT_DIR_OR_RAW_FOLDER [LM_DIR] [HELD_OUT_MANIFEST...]}
lm=${2:-/work/lsdata/lm}
shift $(( $# >= 2 ? 2 : 1 ))
held_out=("$@")
[ ${#held_out[@]} -gt 0 ] || held_out=(/work/lsdata/data/dev.jsonl)
python=${PYTHON:-python3}
mkdir -p "$lm"

if git --git-dir "$src" rev-parse --verify -q HEAD >/dev/null 2>&1; then
  raw=$lm/raw/$(basename "$(dirname "$src")")
  echo "exporting the books of $src (HEAD $(git --git-dir "$src" rev-parse HEAD)) to $raw"
  "$python" "$here/make_lm_text.py" export "$src" "$raw"
else
  raw=$src
fi

# Sentences, normalised: ~20 minutes on one core for ~3,000 books (9.3 M sentences, 176 M words)
"$python" "$here/make_lm_text.py" text "$raw" "$lm/books.txt" 2> "$lm/make_lm_text.log"

# The held-out chapters' own books go, in every edition and translation (a different translation shares runs
# of 5-9 words that the line exclusion below does not catch)
dev_books=${DEV_BOOKS:-"mis.rables|uncle silas|trent's last case|buffalo bill"}
"$python" "$here/make_lm_text.py" drop "$lm/books.txt" "$lm/books_nodev.txt" --title "$dev_books"

# How much of the held-out text the books hold, before the exclusion (and what it would leave)
asrkit lm overlap "$lm/books_nodev.txt" "${held_out[@]}" | tee "$lm/overlap.txt"

# The 4-gram, leak-free: lines holding a held-out transcript or sharing 10 words with one are left out.
# Singleton 2-, 3-, 4-grams pruned and a quantised trie keep the binary to a few hundred MB for ~176 M words.
excludes=()
for m in "${held_out[@]}"; do excludes+=(--exclude "$m"); done
asrkit lm build "$lm/books_nodev.txt" --out "$lm/books_nodev_4gram" --order 4 --prune 0,1,1,1 --memory 6G --trie \
  "${excludes[@]}"

for m in "${held_out[@]}"; do
  "$python" "$here/lm_perplexity.py" "$lm/books_nodev_4gram.bin" "$m"
done

# The baseline: a 4-gram of the training transcripts alone (its manifest beside the held-out one)
train=$(dirname "${held_out[0]}")/train.jsonl
if [ -f "$train" ]; then
  asrkit lm build "$train" --out "$lm/train_4gram" --order 4 "${excludes[@]}"
  for m in "${held_out[@]}"; do "$python" "$here/lm_perplexity.py" "$lm/train_4gram.bin" "$m"; done
fi
