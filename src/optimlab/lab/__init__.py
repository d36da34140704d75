"""The lab: tasks, runs, studies and reports that compare optimizers by measurement.

Tasks know nothing of optimizers; runs pair a task with an optimizer configuration.
"""
