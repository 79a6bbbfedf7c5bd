"""The published contract between the foundation's node and the workspace.

Both sides import it and nothing else of each other: the cohort's data dictionary
(``schema``), the names that cross Flower and MLflow (``names``), the submission as it
crosses into a Flower run (``submission``) and typed values such as a paired comparison
(``values``). It holds no node rule and no data.
"""
