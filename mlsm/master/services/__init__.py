"""Services hold the master's logic; route handlers stay thin and call one of them."""
