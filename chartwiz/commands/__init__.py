"""The `chartwiz` sub-commands, one module each: `register(subcommands)` adds the command's parser."""
