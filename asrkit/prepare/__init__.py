"""Corpus preparation: one module per corpus, each `prepare(corpus_dir, out_dir, ...) -> PrepareResult`."""
