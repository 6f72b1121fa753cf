import pytest

from pih import PihError, Prune, Quantize, all_orders, predicted_order, search_orders


def test_search_orders_and_regret():
    p, q, r = Prune(0.5), Quantize(4), Prune(0.2, structure="row")
    score = {(p, q, r): 1.0, (q, p, r): 3.0}

    def evaluate(order):
        return score.get(order, 0.0)

    res = search_orders([p, q, r], evaluate, cers=[3.0, 4.0, 1.0], progress=False)
    assert len(res.scores) == 6
    assert res.best == (q, p, r)
    assert res.predicted == (r, p, q)
    assert res.regret == pytest.approx(3.0)
    assert res.table()[0]["best"]


def test_predicted_order_is_ascending_intensity():
    p, q = Prune(0.5), Quantize(4)
    assert predicted_order([p, q], [6.0, 4.0]) == (q, p)
    with pytest.raises(PihError, match="cers"):
        predicted_order([p, q], [1.0])


def test_all_orders_refuses_nonsense():
    with pytest.raises(PihError, match="methods"):
        all_orders([])
    with pytest.raises(PihError, match="evaluate"):
        search_orders([Prune(0.1), Quantize(3)], lambda o: float("nan"), progress=False)
