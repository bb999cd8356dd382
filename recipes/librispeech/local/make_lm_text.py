#!/usr/bin/env python3
"""LM text for LibriSpeech from Project Gutenberg books: one sentence a line, normalised like the transcripts.

LibriSpeech's own LM corpus is ~14,500 Gutenberg books (librispeech-lm-norm.txt.gz); this makes a smaller one
from any folder of Gutenberg plain-text books (see make_lm_text.sh for the source used and how it was exported).

    make_lm_text.py export GIT_DIR RAW    # the .txt files of a git snapshot's HEAD, each blob once, into RAW/
    make_lm_text.py text RAW OUT.txt      # RAW/*.txt -> OUT.txt (a sentence a line) + OUT.index.tsv
    make_lm_text.py drop IN.txt OUT.txt --title REGEX   # IN.txt without the books whose title matches REGEX

Per book: the Project Gutenberg header and licence are cut (the text between its START and END markers); books
whose header names a language other than English, or whose words are not English by their share of common
English words, are left out, as are exact duplicates. Paragraphs without lower-case letters (headings, "CHAPTER
IV"), bracketed notes ([Illustration], [Footnote]) and lines of tables of contents go; paragraphs are split into
sentences; a sentence with digits (their spoken form is unknown) or letters outside a-z after folding accents
(Greek, ...) is dropped; titles are spelled as LibriSpeech's transcripts say them (Mr. -> mister, Mrs. -> missus,
Dr. -> doctor) and the rest goes through asrkit's "default" normaliser (asrkit.data.text.normalize_text), as the
manifests' text did.

OUT.index.tsv has a row per book kept: first line, last line (1-based, in OUT.txt), words, source file, title:
`asrkit lm overlap` names LM lines by number; this says which book they come from. `drop` removes whole books
by title (with IN.index.tsv): the held-out chapters' own books, in any edition or translation, so that the LM
has not read the dev text.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from asrkit.data.text import normalize_text
from asrkit.lm_files import normalize_line  # normalize_text, with a fast path for ASCII text (the same result)

START = re.compile(r"^\s*\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG|^\*END\*THE SMALL PRINT", re.I)
END = re.compile(r"^\s*\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG|^\s*End of (the )?Project Gutenberg", re.I)
LANGUAGE = re.compile(r"^Language:\s*(\S.*)$", re.M)
TITLE = re.compile(r"^Title:\s*(\S.*)$", re.M)
FRONT_MATTER = re.compile(r"^(produced by|e-?text prepared by|transcriber'?s? note|this e-?book was produced|"
                          r"note:|\[?illustration|updated editions|special thanks)", re.I)
BRACKETS = re.compile(r"\[[^\]]*\]|\{[^}]*\}")
HEADING = re.compile(r"^(chapter|book|part|volume|vol\.|act|scene|canto|section|letter|stave)\b", re.I)

# Titles as LibriSpeech's transcripts spell them (its readers read them out; its LM text was normalised so).
ABBREVIATIONS = {"Mr": "mister", "Mrs": "missus", "Dr": "doctor", "Messrs": "messieurs", "Mme": "madame",
                 "Mlle": "mademoiselle", "Capt": "captain", "Col": "colonel", "Gen": "general", "Lieut": "lieutenant",
                 "Rev": "reverend", "Prof": "professor", "Hon": "honourable", "Jr": "junior", "Sr": "senior",
                 "Gov": "governor", "Sgt": "sergeant", "Maj": "major", "Mt": "mount", "Bros": "brothers"}
_ABBREV = re.compile(r"\b(" + "|".join(ABBREVIATIONS) + r")\.", re.I)
_SAINT = re.compile(r"\bSt\.(?=\s+[A-Z])")  # St. Paul -> saint paul; High St. -> street
_STREET = re.compile(r"\bSt\.")
_ETC = re.compile(r"\betc\.", re.I)
# A sentence ends at . ! ? (then closing quotes / brackets) before white space; not after an initial ("J. M.").
_SENTENCE_END = re.compile(r"(?<![\s.][A-Z]\.)(?<=[.!?])([\"'\u201d\u2019)\]_]*)\s+(?=[\"'\u201c\u2018(_]*[A-Z0-9])")
_LETTERS = re.compile(r"[^a-z' ]")
_DIGIT = re.compile(r"\d")
# Typographic punctuation as ASCII, so that most sentences take normalize_text's fast path for ASCII text
PLAIN = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2014": " - ",
                       "\u2013": " - ", "\u2026": "...", "\u00a0": " "})
ENGLISH = frozenset("the and of to a in that it was he i his is with for as had you not be her on at by which "
                    "have or from this him but all she they were my are me one their so an said them we who would "
                    "been will no when there if more out up into do any your what has man could".split())
MIN_ENGLISH = 0.25  # share of a book's words among ENGLISH: English prose has ~0.4, French or Latin < 0.05


def fold(text: str) -> str:
    """Accents off (café -> cafe), ligatures spelled out, typographic quotes and dashes plain."""
    text = text.replace("æ", "ae").replace("Æ", "Ae").replace("œ", "oe").replace("Œ", "Oe")
    text = unicodedata.normalize("NFKD", text)
    return "".join(c for c in text if not unicodedata.combining(c))


def expand(paragraph: str) -> str:
    """Titles spelled out, before the sentences are split (the period of "Mr." ends none)."""
    paragraph = _ABBREV.sub(lambda m: ABBREVIATIONS[next(k for k in ABBREVIATIONS if k.lower() == m.group(1).lower())]
                            + " ", paragraph)
    paragraph = _STREET.sub("street.", _SAINT.sub("saint", paragraph))
    return _ETC.sub("et cetera.", paragraph).replace("&", " and ")


def normalise_sentence(sentence: str) -> str:
    """A sentence as the transcripts would have it, or "" when it cannot be said for sure (digits, foreign
    letters)."""
    if _DIGIT.search(sentence):
        return ""
    text = normalize_line(sentence) if sentence.isascii() else normalize_text(fold(sentence))
    return "" if _LETTERS.search(text) else text


def sentences(paragraph: str) -> list[str]:
    paragraph = expand(BRACKETS.sub(" ", paragraph))
    return [s for s in _SENTENCE_END.sub(lambda m: m.group(1) + "\n", paragraph).split("\n") if s.strip()]


def body(raw: str) -> str:
    """The book between Project Gutenberg's START and END markers (all of it where they are missing)."""
    lines = raw.splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if START.search(line)), 0)
    end = next((i for i in range(len(lines) - 1, start - 1, -1) if END.search(lines[i])), len(lines))
    return "\n".join(lines[start:end])


def paragraphs(text: str) -> Iterator[str]:
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        joined = " ".join(lines)
        if not re.search(r"[a-z]", joined) or FRONT_MATTER.match(joined):
            continue  # headings in capitals, title pages; producers' and transcribers' notes
        if HEADING.match(joined) and len(joined.split()) <= 12:
            continue  # "Chapter the First. In which ..."
        if len(lines) > 2 and sum(len(line) < 40 for line in lines) == len(lines) and not re.search(
                r"[.!?,;]\W*$", lines[0]):
            continue  # a table of contents or a list of names, not prose (verse keeps its punctuation)
        yield joined


def book_sentences(raw: str) -> tuple[list[str], str | None]:
    """The normalised sentences of a raw Gutenberg book, or ([], why it is left out)."""
    header = raw[:5000]
    language = LANGUAGE.search(header)
    if language and "english" not in language.group(1).lower():
        return [], f"language {language.group(1).strip()}"
    out: list[str] = []
    for paragraph in paragraphs(body(raw)):
        for sentence in sentences(paragraph):
            text = normalise_sentence(sentence)
            if text:
                out.append(text)
    words = [w for s in out for w in s.split()]
    if not words:
        return [], "no sentences"
    share = sum(w in ENGLISH for w in words) / len(words)
    if share < MIN_ENGLISH:
        return [], f"not English prose ({share:.2f} of its words are common English words)"
    return out, None


def read_book(path: Path) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # Gutenberg's older files are ISO-8859-1
    return text.translate(PLAIN)


def make_text(raw_dir: Path, out: Path) -> None:
    books = sorted(raw_dir.rglob("*.txt"))
    if not books:
        sys.exit(f"{raw_dir}: no .txt books")
    seen: set[bytes] = set()
    kept = lines = words = 0
    index = out.with_suffix(".index.tsv")
    with open(out, "w", encoding="utf-8") as text, open(index, "w", encoding="utf-8") as rows:
        rows.write("first_line\tlast_line\twords\tfile\ttitle\n")
        for n, path in enumerate(books, 1):
            raw = read_book(path)
            found, why = book_sentences(raw)
            digest = hashlib.sha1("\n".join(found).encode()).digest()
            if why or digest in seen:
                print(f"skip {path.name}: {why or 'a duplicate'}", file=sys.stderr)
                continue
            seen.add(digest)
            title = TITLE.search(raw[:5000])
            count = sum(len(s.split()) for s in found)
            text.write("".join(s + "\n" for s in found))
            rows.write(f"{lines + 1}\t{lines + len(found)}\t{count}\t{path.relative_to(raw_dir)}\t"
                       f"{title.group(1).strip() if title else ''}\n")
            kept, lines, words = kept + 1, lines + len(found), words + count
            if n % 200 == 0:
                print(f"{n}/{len(books)} books read, {words:,} words", file=sys.stderr)
    print(f"{out}: {kept} of {len(books)} books, {lines:,} sentences, {words:,} words; index {index}")


def drop_books(src: Path, out: Path, title: str) -> None:
    """SRC.txt without the line ranges (SRC.index.tsv) of the books whose title matches `title` (a regex, case
    ignored) -> OUT.txt + OUT.index.tsv."""
    pattern = re.compile(title, re.IGNORECASE)
    rows = src.with_suffix(".index.tsv").read_text(encoding="utf-8").splitlines()
    dropped = [r.split("\t") for r in rows[1:] if pattern.search(r.split("\t")[4])]
    if not dropped:
        sys.exit(f"{src.with_suffix('.index.tsv')}: no book title matches {title!r}")
    gone = [range(int(r[0]), int(r[1]) + 1) for r in dropped]
    kept_rows, shift = [rows[0]], 0
    for row in rows[1:]:
        first, last, rest = row.split("\t", 2)
        if any(int(first) in g for g in gone):
            shift += int(last) - int(first) + 1
            continue
        kept_rows.append(f"{int(first) - shift}\t{int(last) - shift}\t{rest}")
    with open(src, encoding="utf-8") as lines, open(out, "w", encoding="utf-8") as text:
        for number, line in enumerate(lines, 1):
            if not any(number in g for g in gone):
                text.write(line)
    out.with_suffix(".index.tsv").write_text("\n".join(kept_rows) + "\n", encoding="utf-8")
    for r in dropped:
        print(f"dropped {r[3]} ({r[4]}): lines {r[0]}-{r[1]}, {int(r[2]):,} words")
    print(f"{out}: {len(kept_rows) - 1} books; index {out.with_suffix('.index.tsv')}")


def export(git_dir: Path, raw_dir: Path) -> None:
    """Each distinct .txt blob of GIT_DIR's HEAD as RAW/<blob>.txt, with RAW/sources.tsv naming its paths."""
    listing = subprocess.run(["git", "--git-dir", str(git_dir), "ls-tree", "-r", "-z", "HEAD"], check=True,
                             capture_output=True).stdout.decode("utf-8").split("\0")
    paths: dict[str, list[str]] = {}
    for entry in filter(None, listing):
        meta, path = entry.split("\t", 1)
        if path.endswith(".txt") and meta.split()[1] == "blob":
            paths.setdefault(meta.split()[2], []).append(path.replace("\r", " ").replace("\t", " "))
    raw_dir.mkdir(parents=True, exist_ok=True)
    missing: list[str] = []
    with subprocess.Popen(["git", "--git-dir", str(git_dir), "cat-file", "--batch"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE) as cat:
        assert cat.stdin is not None and cat.stdout is not None
        for blob in paths:
            cat.stdin.write(f"{blob}\n".encode())
            cat.stdin.flush()
            header = cat.stdout.readline().split()
            if header[-1] == b"missing":  # a snapshot may lack its largest files
                missing.append(blob)
                continue
            (raw_dir / f"{blob[:12]}.txt").write_bytes(cat.stdout.read(int(header[2])))
            cat.stdout.read(1)
        cat.stdin.close()
    for blob in missing:
        del paths[blob]
    (raw_dir / "sources.tsv").write_text("".join(f"{b[:12]}.txt\t{' | '.join(p)}\n" for b, p in paths.items()),
                                         encoding="utf-8")
    print(f"{raw_dir}: {len(paths)} distinct books of {sum(map(len, paths.values()))} .txt files"
          f"{f'; {len(missing)} missing from the snapshot' if missing else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    exp = sub.add_parser("export", help="the .txt books of a git snapshot's HEAD into a folder")
    exp.add_argument("git_dir", type=Path)
    exp.add_argument("raw", type=Path)
    txt = sub.add_parser("text", help="a folder of Gutenberg .txt books -> LM text, a sentence a line")
    txt.add_argument("raw", type=Path)
    txt.add_argument("out", type=Path)
    drop = sub.add_parser("drop", help="LM text without the books whose title matches a regex")
    drop.add_argument("src", type=Path)
    drop.add_argument("out", type=Path)
    drop.add_argument("--title", required=True, help="regex over the index's titles, case ignored")
    args = parser.parse_args()
    if args.step == "export":
        export(args.git_dir, args.raw)
    elif args.step == "drop":
        drop_books(args.src, args.out, args.title)
    else:
        make_text(args.raw, args.out)


if __name__ == "__main__":
    main()
