"""Fault-injection tests: relay must neither lose nor leak, whatever breaks around it."""
