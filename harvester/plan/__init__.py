"""The plan: a job become a lazy stream of units, and the order accounts take turns in.

``windows`` cuts each collection's range into calendar windows (day, week, month, range);
``schedule`` splits the stream by account and hands a free worker the unit whose account's
budget admits a call soonest.
"""
