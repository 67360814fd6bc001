"""Documents as a service: create, list, inspect and delete documents; the doctor report and online backup."""
