"""Throwaway CPU probes behind the AGD diagnosis in the README; each script names its command,
and what they wrote lives in docs/agd/."""
