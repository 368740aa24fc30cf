"""The prompt table and text guidance without any text model (docs/algorithm.md §1): one encoding per
string, ids per (prompt, negative) pair, rows gathered by id, a bounded device cache, and the guided ε."""

import pytest
import torch

from vipaint.priors.prompts import PromptTable, text_guided_eps


def _table():
    calls = []

    def encode(strings):
        calls.append(list(strings))
        h = torch.stack([torch.full((3, 2), float(len(s))) for s in strings])     # row value = string length
        return h, h[:, 0, :1] * 10
    return PromptTable(encode), calls


def test_rows_are_gathered_by_pair_and_which():
    table, calls = _table()
    ids = table.ids(["ab", "abcd", "ab"], ["x", "", "x"])
    assert ids.tolist() == [0, 1, 0] and calls == [["ab", "abcd", "x", ""]]
    h, p = table.context(ids, "prompt", torch.device("cpu"), torch.float64)
    assert h.dtype == torch.float64 and h[:, 0, 0].tolist() == [2, 4, 2] and p[:, 0].tolist() == [20, 40, 20]
    h, _ = table.context(ids, "negative", torch.device("cpu"), torch.float32)
    assert h[:, 0, 0].tolist() == [1, 0, 1]
    h, _ = table.unconditional(2, torch.device("cpu"), torch.float32)
    assert h[:, 0, 0].tolist() == [0, 0]
    with pytest.raises(ValueError, match="prompt ids must lie in"):
        table.context(torch.tensor([5]), "prompt", torch.device("cpu"), torch.float32)


def test_the_device_cache_stays_bounded():
    table, _ = _table()
    ids = table.ids([f"p{i}" for i in range(20)])
    for i in range(20):
        table.context(ids[i:i + 1], "prompt", torch.device("cpu"), torch.float32)
    assert table.n_cached == PromptTable.CACHED_SETS


def test_guided_eps_is_one_batched_call():
    table, _ = _table()
    ids = table.ids(["abc", "a"], "ab")
    seen = []

    def net(z, t, ctx):
        seen.append(z.shape[0])
        return z * ctx[0][:, :1, :1].reshape(-1, 1)

    z, t = torch.ones(2, 1), torch.zeros(2, dtype=torch.long)
    out = text_guided_eps(net, z, t, ids, 3.0, table)
    assert seen == [4]
    torch.testing.assert_close(out, torch.tensor([[2 + 3 * (3 - 2)], [2 + 3 * (1 - 2)]], dtype=torch.float32))
    assert text_guided_eps(net, z, t, None, 3.0, table).tolist() == [[0.0], [0.0]]      # the empty prompt
