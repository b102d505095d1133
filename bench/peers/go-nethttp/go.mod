module bench/nethttp

go 1.19
