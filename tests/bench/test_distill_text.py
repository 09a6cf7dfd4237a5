"""The training-line selection of the distillation benchmark's text (bench/distill_text.py)."""

from bench.distill_text import by_coverage, split


def test_coverage_prefers_lines_with_new_words_and_keeps_their_order():
    texts = ["the cat sat on the mat", "the cat sat on the rug", "a dog ran far away", "the cat sat"]
    chosen = by_coverage(texts, 2)
    # every word of the dog line and of "the cat sat" is new (1 per word); the longer cat lines
    # repeat "the" (5 of 6)
    assert chosen == ["a dog ran far away", "the cat sat"]
    # once the cat lines' words are taken, the mat line adds two words in six, the rug line as many (the first wins a tie)
    assert by_coverage(texts, 3) == ["the cat sat on the mat", "a dog ran far away", "the cat sat"]


def test_coverage_weighs_new_words_per_word_so_long_lines_do_not_win_by_length():
    long = "one two three four five six seven eight nine ten " + "same " * 30
    texts = [long, "alpha beta", "gamma delta"]
    assert by_coverage(texts, 2) == ["alpha beta", "gamma delta"]


def test_coverage_of_more_than_there_is_returns_all():
    assert by_coverage(["b c", "a"], 5) == ["b c", "a"]


def test_split_is_by_text_so_training_and_eval_never_share_a_line():
    texts = [f"line number {i}" for i in range(400)]
    train, evals = split(texts, 10_000, 10_000)
    assert not set(train) & set(evals) and len(train) + len(evals) == 400
    assert split(texts[::-1], 10_000, 10_000)[1] == evals[::-1]


def test_spread_takes_one_line_from_each_group_of_meanings(monkeypatch):
    import numpy as np

    import bench.distill_text as dt

    texts = ["cat a", "cat b", "cat c", "car a", "car b"]
    vectors = np.array([[1, 0.05], [1, 0], [1, -0.05], [0, 1], [0.05, 1]], np.float32)
    monkeypatch.setattr(dt, "_minilm_embeddings", lambda t: vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    chosen = dt.by_spread(texts, 2)
    assert chosen[0] in texts[:3] and chosen[1] in texts[3:]
    assert dt.by_spread(texts, 9) == texts
