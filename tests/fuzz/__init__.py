"""A file fuzzer: real photographs in every format we read, mutated the ways files break (:mod:`.mutations`).

``tests/test_fuzz_files.py`` runs a few hundred fixed cases in the test suite; ``benchmarks/fuzz_files.py`` runs
thousands through ``load_image``, ``detector detect``, ``detector evaluate`` and the service and counts the outcomes.
"""
