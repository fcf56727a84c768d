"""Loading OPT: sources (sizes, hub ids, folders), fetching, applying a memory plan, unloading."""
