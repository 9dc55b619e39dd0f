-- Kill the gateway process.
os.exit(0)
return true
