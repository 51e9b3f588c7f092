"""Symbolic solvers that write demonstrations in the published trace language."""

from apr.search.apr import AprConfig, solve_apr
from apr.search.beam import ORDERS
from apr.search.sos import SosConfig, solve_sos

__all__ = ["ORDERS", "AprConfig", "SosConfig", "solve_apr", "solve_sos"]
