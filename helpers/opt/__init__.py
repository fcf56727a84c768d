"""OPT itself: the size table, the tokenizer and its BOS rule, facts about a model object, random weights."""
