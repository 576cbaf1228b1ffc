#!/bin/sh
# a step of the diamond: says who it is, sleeps a little
mkdir -p out
echo "node $1 ${2:+($2)}"
sleep 0.2
