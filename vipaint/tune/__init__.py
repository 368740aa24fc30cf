"""Tuning: each method's search space (`vipaint.tune.spaces`), the configurations tried and chosen
(`vipaint.tune.search`), and the runner `python -m vipaint.tune --spec ...` (`vipaint.tune.__main__`)."""

from vipaint.tune.search import Criterion, Trial, choose, propose
from vipaint.tune.spaces import Knob, SearchSpace, search_spaces

__all__ = ["Criterion", "Knob", "SearchSpace", "Trial", "choose", "propose", "search_spaces"]
