"""The book: the runner, the stage context, profiles, generated pages (results, what reproduces,
parameters, run comparison), plots and teaching widgets."""
