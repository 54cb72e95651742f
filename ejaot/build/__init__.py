"""The build: manifest -> plan -> lower -> store, then finalize on the serving host.

  manifest.py     reads and checks a manifest (errors name file and key)
  plan.py         expands it into entries (kernel x bucket x dtype x target), each keyed by
                  the sha256 of its identity; tuned.py picks each entry's config
  lower.py        lowers an entry (jax.export, portable tier; compiled tier where the host
                  can compile for the target); lower_mesh.py for multi-chip entries
  builder.py      runs the plan (in-process, a process pool, or executors/ray_executor.py)
                  and writes each entry atomically into the store; shard.py splits a plan
                  over machines, merge.py joins their stores
  finalize.py     adds the compiled tier on the serving host

Nothing here imports ejaot.runtime: a build never loads a store to serve it.
"""
