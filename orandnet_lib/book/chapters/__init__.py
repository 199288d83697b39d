"""Tables and figures of the book's chapters, one module per chapter (named after its stage).

A chapter module draws what a stage computed; it takes plain values (datasets, tables, arrays),
never a stage's own objects, since the book sits below the stages.
"""
