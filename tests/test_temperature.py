import pytest

from ltd import temperature


def test_tmax_is_smallest_temperature_below_threshold():
    subs = [(100, 0.5), (20, 0.93), (50, 0.8663), (30, 0.91)]
    assert temperature.find_tmax(subs, 0.9) == 50
    assert temperature.find_tmax(subs, 0.95) == 20
    assert temperature.find_tmax(subs, 0.4) is None


def test_choose_respects_tmax_and_criterion():
    cands = [(1, 0.50), (5, 0.55), (10, 0.53), (20, 0.70)]
    assert temperature.choose(cands, tmax=20, criterion="pgd_accuracy") == 5
    assert temperature.choose(cands, tmax=None, criterion="pgd_accuracy") == 20
    assert temperature.choose(cands, tmax=20, criterion="eq9_loss") == 1
    with pytest.raises(ValueError, match="below T_max"):
        temperature.choose(cands, tmax=1, criterion="pgd_accuracy")
    with pytest.raises(ValueError, match="criterion"):
        temperature.choose(cands, tmax=None, criterion="vibes")
