"""Several hotline nodes on one machine (``ivr cluster``): PostgreSQL, Redis, Kamailio, and an
Asterisk with a controller per node."""
