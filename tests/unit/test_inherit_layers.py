import pytest
import torch

from rethinktiny.errors import UserError
from rethinktiny.inherit.layer_choice import (choose_layers, first_last_layers, parse_layer_list, select_layers,
                                        top_indices, uniform_layers)


@pytest.mark.parametrize("n, k, expected", [(6, 3, [0, 1, 5]), (6, 4, [0, 1, 4, 5]), (5, 5, [0, 1, 2, 3, 4]),
                                            (7, 1, [0]), (32, 20, [*range(10), *range(22, 32)])])
def test_first_last_fills_from_both_ends(n, k, expected):
    assert first_last_layers(n, k) == expected


@pytest.mark.parametrize("n, k, expected", [(6, 3, [0, 3, 5]), (10, 2, [0, 9]), (5, 5, [0, 1, 2, 3, 4]),
                                            (7, 4, [0, 2, 4, 6]), (4, 1, [0])])
def test_uniform_spacing_includes_both_ends(n, k, expected):
    assert uniform_layers(n, k) == expected


def test_uniform_is_distinct_for_every_count():
    for n in range(1, 40):
        for k in range(1, n + 1):
            kept = uniform_layers(n, k)
            assert len(set(kept)) == k and kept == sorted(kept) and kept[-1] <= n - 1


def test_select_layers_top_scores_in_model_order_and_stable_ties():
    assert select_layers([0.1, 0.9, 0.3, 0.9, 0.05], 3) == [1, 2, 3]
    assert select_layers(torch.tensor([1.0, 1.0, 1.0]), 2) == [0, 1]
    assert top_indices(torch.tensor([3.0, 1.0, 2.0]), 0).tolist() == []


def test_explicit_list_and_errors():
    assert choose_layers("5,0,2", 6, 3) == [0, 2, 5]
    with pytest.raises(UserError, match="lists 2 layers but the target has 3"):
        parse_layer_list("0,1", 6, 3)
    with pytest.raises(UserError, match="layer 6 is outside"):
        parse_layer_list("0,1,6", 6, 3)
    with pytest.raises(UserError, match="listed twice"):
        parse_layer_list("0,1,1", 6, 3)
    with pytest.raises(UserError, match="comma-separated"):
        parse_layer_list("middle", 6, 3)
    with pytest.raises(UserError, match="needs calibration"):
        choose_layers("block-influence", 6, 3, None)
    with pytest.raises(UserError, match="cannot keep 7 of 6"):
        first_last_layers(6, 7)
