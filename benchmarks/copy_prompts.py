"""Requests whose answers largely copy their prompt (code edits, quoting, extraction): the workload
prompt lookup (n-gram speculative decoding) is made for. Used by benchmarks/speculative_bench.py."""

_FUNCTION = '''def parse_config(path):
    with open(path) as handle:
        lines = handle.read().splitlines()
    config = {}
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        key, value = line.split("=", 1)
        config[key.strip()] = value.strip()
    return config
'''

_CLASS = '''class Counter:
    def __init__(self):
        self.counts = {}

    def add(self, word):
        self.counts[word] = self.counts.get(word, 0) + 1

    def most_common(self, n):
        ordered = sorted(self.counts.items(), key=lambda item: item[1], reverse=True)
        return ordered[:n]
'''

_PASSAGE = ("The harbour was quiet in the early morning. Fishing boats rocked gently against the pier, their "
            "ropes creaking with every wave. An old man sat on a wooden crate, mending a net with slow, careful "
            "hands, while gulls circled overhead and called to one another. Further along the quay, a baker "
            "opened the shutters of his shop, and the smell of fresh bread drifted over the water.")

_RECORD = ("Name: Maria Lopez\nEmployee number: 48213\nDepartment: Logistics\nOffice: Building C, room 214\n"
           "Phone: +34 912 555 018\nEmail: maria.lopez@example.com\nStart date: 2019-03-11\nManager: Daniel Kim")

COPY_PROMPTS = [
    "Rename the variable `config` to `settings` in this Python function. Return the whole function.\n\n"
    + _FUNCTION,
    "Add a docstring to each method of this class and return the whole class.\n\n" + _CLASS,
    "Quote the following passage exactly, word for word, inside quotation marks.\n\n" + _PASSAGE,
    "Fix the spelling of 'harbour' to 'harbor' in this paragraph and return the paragraph.\n\n" + _PASSAGE,
    "Rewrite this record as a JSON object with the same fields and values.\n\n" + _RECORD,
    "Return this record unchanged, but with the phone number removed.\n\n" + _RECORD,
    ("Repeat this list exactly, one item a line: apples, pears, plums, figs, dates, limes, kiwis, mangos, "
     "lemons, grapes, cherries, peaches, apricots, melons, oranges, quinces."),
    "Change the function to use `pathlib.Path.read_text` instead of `open`, and return the whole function.\n\n"
    + _FUNCTION,
]
