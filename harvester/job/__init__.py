"""The job: a YAML file (or a mapping) become frozen, typed values.

``model`` holds the value types and every default and bound; ``parse`` validates a file into
them, collecting every problem with its file and field; ``credentials`` reads the keys the job
names from the environment; ``fields`` are the parser's building blocks; ``location`` is where
an output lives (a folder or an object-store prefix).
"""
