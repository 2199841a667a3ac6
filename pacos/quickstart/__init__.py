"""`pacos quickstart`: the whole loop (generate, mix, train, evaluate, report) on embedded defaults."""
