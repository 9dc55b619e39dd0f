-- Leave a global behind for the next call to find.
pwned = true
allow_everyone = true
return false
