"""New training sentences made from the training lines (bench/text_augment.py)."""

from types import SimpleNamespace

import torch

from bench.text_augment import crossover_variants, neighbour_variants, swap_pool


def test_crossover_joins_two_lines_at_a_word_they_share():
    lines = ["he walked to the store after work", "she drove to the coast"]
    out = crossover_variants(lines, 1, None, None, seed=0)
    # each line is cut at "the" (the only word of 3+ letters inside both) and finished by the other
    assert out == ["he walked to the coast", "she drove to the store after work"]


def test_crossover_gives_nothing_for_lines_sharing_no_inner_word():
    assert crossover_variants(["a cat sat here", "dogs ran far away"], 3, None, None) == []


def test_crossover_never_joins_a_line_to_itself():
    # "the" is twice in the first line and in no other: no variant, and no endless redraw
    assert crossover_variants(["we saw the cat and the dog", "birds fly high up"], 2, None, None) == []


def _tiny(words, vectors):
    tok = SimpleNamespace(get_vocab=lambda: {w: i for i, w in enumerate(words)})
    emb = SimpleNamespace(word_embeddings=SimpleNamespace(weight=torch.tensor(vectors, dtype=torch.float32)))
    return tok, SimpleNamespace(embeddings=emb)


def test_neighbours_are_the_nearest_words_of_four_letters_or_more():
    words = ["great", "terrific", "awful", "the", "##ing", "dreadful"]
    vectors = [[1, 0.1], [1, 0.2], [-1, 0.1], [1, 0.15], [1, 0.1], [-1, 0.2]]
    tok, model = _tiny(words, vectors)
    table = swap_pool(tok, [], "neighbours", model, k=1)
    assert table == {"great": ["terrific"], "terrific": ["great"], "awful": ["dreadful"], "dreadful": ["awful"]}


def test_neighbour_variants_keep_punctuation_and_capitals_and_change_one_word_at_least():
    table = {"great": ["terrific"], "idea": ["notion"]}
    out = neighbour_variants(["Great idea, the best.", "no entries here"], 1, table, 0.0, seed=0)
    assert len(out) == 1 and out[0] in {"Terrific idea, the best.", "Great notion, the best."}
    assert neighbour_variants(["Great idea, the best."], 1, table, 1.0) == ["Terrific notion, the best."]
